"""The event journal: every balance-changing batch, in commit order, resumable by cursor."""
