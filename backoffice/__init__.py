"""Staff tools over the core's BackofficeService (review, treasury, compliance).
`python -m backoffice.cli` reviews withdrawals (list, approve with the staff key, reject)."""
