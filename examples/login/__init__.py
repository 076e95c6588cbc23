"""A login API to attack: ``docs/abuse.md``'s sessions and the abuse tests run it."""
