"""Settlement: what each dispatch event delivered, what it earned, and who gets paid.

The pure calculations (baselines, day-of adjustments, performance, vehicle attribution, payment terms,
allocation) have no I/O and work on pandas series and plain values; the ledger, the settlement runs
and the statements read and write the database.
"""
