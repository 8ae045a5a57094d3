"""The total budget (`study.total_budget`): what a trial costs, the bookkeeper's admission, and the ledger as text."""
