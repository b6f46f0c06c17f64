"""What the tests share: tiny models, hooks, servers, fakes and reference computations (not tests themselves)."""
