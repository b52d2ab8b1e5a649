"""The payment service: users and their credit; the pivot step of the checkout saga."""
