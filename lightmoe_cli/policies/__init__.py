"""Pure policies: which experts stay resident, where missing ones are redirected, when to swap.

Arrays in, arrays out: no model, no files, no hooks. The bundle builder and the runtime call these.
"""
