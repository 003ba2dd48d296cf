"""How one case is measured: its process, its clocks and memory, and the machine's ceilings."""
