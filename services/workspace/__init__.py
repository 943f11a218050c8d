"""The workspace service: sessions and their items, the permanent library,
reference uploads, and the filer that turns completed jobs into items."""
