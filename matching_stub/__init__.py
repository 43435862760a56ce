"""Order books in memory whose orders hold funds and whose fills settle in the ledger.
Arrives with the matching issue."""
