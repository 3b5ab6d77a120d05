"""`sovereign simulate`: the hub's dispatcher over simulated devices, batteries and energy, in virtual time."""
