"""Events: the append-only record of every catalog change, its cursor reads and its live
stream.  Imports no other domain; every domain may publish into it."""
