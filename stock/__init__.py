"""The stock service: items, their stock and price; a participant of the checkout saga."""
