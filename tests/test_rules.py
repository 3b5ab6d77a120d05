"""Compiled patterns: detection, approval, routing first, persistence, and the CLI."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp

from hub.router.model import TaskRequest
from hub.router.rules import RuleBook, RulesConfig

from .conftest import ROOT


def ask(text: str, task: str = "intent") -> TaskRequest:
    return TaskRequest(task=task, text=text)


def test_stable_answers_are_proposed_unstable_ones_not(tmp_path: Path) -> None:
    book = RuleBook(RulesConfig(min_count=5), tmp_path / "rules.sqlite3")
    label = {"intent": "schedule_meeting", "action": "calendar.create"}
    proposed = [book.observe(ask("Schedule a meeting with Ana" if i % 2 else "schedule a  meeting with ana"), label)
                for i in range(5)]
    assert proposed[:4] == [None] * 4 and proposed[4] is not None and proposed[4].state == "proposed"
    for i in range(6):
        book.observe(ask("what's the weather"), {"intent": "weather" if i % 2 else "small_talk"})
    assert [r.pattern for r in book.all()] == ["t:schedule a meeting with ana"], "unstable: never proposed"
    assert book.observe(ask("write a poem", task="draft"), {"text": "…"}) is None, "prose is not compiled"
    rid = proposed[4].id
    assert book.find(ask("schedule a meeting with Ana")) is None, "not before approval"
    book.set_state(rid, "approved")
    assert book.match(ask("SCHEDULE a meeting with Ana")).answer == label
    book.close()
    again = RuleBook(RulesConfig(), tmp_path / "rules.sqlite3")
    rule = again.find(ask("schedule a meeting with ana"))
    assert rule is not None and rule.hits == 1 and rule.state == "approved"
    again.set_state(rid, "disabled")
    assert again.find(ask("schedule a meeting with ana")) is None


async def test_rules_are_routed_first_and_managed_from_the_cli(mosquitto: Any, make_hub: Any) -> None:
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}) as hub:
        for _ in range(5):
            rule = hub.rules.observe(ask("turn off the lights"), {"intent": "lights_off"})
        assert rule is not None

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "hub", "rules", *args, "--url", hub.http_url],
                                  capture_output=True, text=True, cwd=ROOT, timeout=30)

        listed = await asyncio.to_thread(cli, "list")
        assert listed.returncode == 0 and rule.id in listed.stdout and "proposed" in listed.stdout
        approved = await asyncio.to_thread(cli, "approve", rule.id)
        assert approved.returncode == 0 and approved.stdout.strip() == f"rule {rule.id} is now approved"
        unknown = await asyncio.to_thread(cli, "approve", "0123456789ab")
        assert unknown.returncode == 1 and "no rule with id '0123456789ab'" in unknown.stderr
        malformed = await asyncio.to_thread(cli, "approve", "nope")
        assert malformed.returncode == 1 and "a rule id is 12 lowercase hex digits" in malformed.stderr
        async with aiohttp.ClientSession() as s:
            async with s.post(f"{hub.http_url}/api/route", json={"task": "intent", "text": "Turn off the lights"}) as r:
                d = await r.json()
        assert d["chosen"]["runtime"] == "code" and d["chosen"]["cost"] == 0 and d["reasons"][0].startswith("rule ")
