"""The built-in price list of cloud models: published list prices per million input and output
tokens, in US dollars, standard (not batch, not cached) API rates, each with its source.

It prices cloud calls the router sends (``cost`` of a cloud candidate) and the ledger's
counterfactual "had everything gone to the cloud" (``router.counterfactual_model``) when
``router.cloud_prices`` in hub.toml does not: a price there, for the model or its ``"*"``, always
wins, and ``router.builtin_cloud_prices = false`` switches this list off. Nothing here is an
estimate; a model not listed has no price ("no price" in the API, the CLI and the dashboard)
rather than a guessed one. Prices change: the date says when each figure was last checked.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ListPrice:
    input_per_mtok: float
    output_per_mtok: float
    source: str
    checked: str  # ISO date the figure was last read at (or through) its source


#: When the list was last reviewed as a whole.
PRICE_LIST_DATE = "2026-11-28"

_HAIKU_45 = ListPrice(1.0, 5.0, "Anthropic, Claude Haiku 4.5 model page (platform.claude.com/docs, models/haiku-4-5): "
                                "input $1 / MTok, output $5 / MTok; released 2025-10-15", "2026-11-28")
_SONNET_45 = ListPrice(3.0, 15.0, "Anthropic, Claude Sonnet 4.5 model page (platform.claude.com/docs, "
                                  "models/sonnet-4-5): input $3 / MTok, output $15 / MTok; released 2025-09-29",
                       "2026-11-28")
# examples/fleet.toml [15] (Anthropic's price list as cited there, no date recorded).
_HAIKU_35 = ListPrice(0.80, 4.0, "Anthropic price list as cited in examples/fleet.toml [15]: Claude 3.5 Haiku "
                                 "$0.80 in / $4 out per million tokens", "2026-11-28")
_SONNET_35 = ListPrice(3.0, 15.0, "Anthropic price list as cited in examples/fleet.toml [15]: Claude 3.5 Sonnet "
                                  "$3 in / $15 out per million tokens", "2026-11-28")
_GPT_4O_MINI = ListPrice(0.15, 0.60, "OpenAI, 'GPT-4o mini: advancing cost-efficient intelligence' (2024-07-18): "
                                     "$0.15 per million input tokens, $0.60 per million output tokens (read as "
                                     "restated on OpenRouter's model page for gpt-4o-mini-2024-07-18, not at "
                                     "OpenAI's own page)", "2026-11-28")

#: By the model name a device announces (the agent's defaults: hub/agent/executors/cloud.py).
BUILTIN_CLOUD_PRICES: dict[str, ListPrice] = {
    "claude-haiku-4-5": _HAIKU_45,
    "claude-haiku-4-5-20251001": _HAIKU_45,
    "claude-sonnet-4-5": _SONNET_45,
    "claude-sonnet-4-5-20250929": _SONNET_45,
    "claude-3-5-haiku-latest": _HAIKU_35,
    "claude-3-5-haiku-20241022": _HAIKU_35,
    "claude-3-5-sonnet-latest": _SONNET_35,
    "claude-3-5-sonnet-20241022": _SONNET_35,
    "gpt-4o-mini": _GPT_4O_MINI,
    "gpt-4o-mini-2024-07-18": _GPT_4O_MINI,
}

#: The model the ledger's all-cloud counterfactual is priced as unless hub.toml says otherwise:
#: the cheaper of the two Claude models the agent offers by default (hub/agent/executors/cloud.py),
#: so the saving claimed against "all cloud" is not flattered by a dear model.
DEFAULT_COUNTERFACTUAL_MODEL = "claude-haiku-4-5"
