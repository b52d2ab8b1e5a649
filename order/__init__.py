"""The order service: orders, and the checkout saga that pays for them."""
