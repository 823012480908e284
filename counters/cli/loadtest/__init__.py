"""``counters loadtest``: a load driver for a running deployment (population, mixes, driver,
report), sharing its population and award mix with ``make bench``."""
