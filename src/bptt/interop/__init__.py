"""Floor 6: exchange with other frameworks. ``bptt.interop.torch`` imports torch lazily."""
