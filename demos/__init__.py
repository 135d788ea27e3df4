"""The uses of puppet, composed from the library: they hold no logic of their own."""
