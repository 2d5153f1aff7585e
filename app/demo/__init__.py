"""``python -m app demo``: a fleet of agents spends, sleeps and wakes over simulated days.

Everything is real but the clock: PostgreSQL, Redis, the repositories, the wake worker
and the budget daemon run as in production, in-process, sharing a virtual clock on
which a day passes in a few seconds. At the end the demo checks its own run and exits
1 if any promise was broken, naming the session and the check.

The package is split by job: ``fleet`` simulates the agents, ``audit`` checks the run
against PostgreSQL, ``report`` prints it, and ``run`` wires them together.
"""

from app.demo.run import run_demo

__all__ = ["run_demo"]
