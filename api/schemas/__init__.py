"""Request and response bodies as msgspec Structs, one module per concern."""
