"""Staff tools over the core's BackofficeService (review, treasury, compliance).
Today staff use BackofficeService.AdjustBalance directly; the CLI arrives with the review issue."""
