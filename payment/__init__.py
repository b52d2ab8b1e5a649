"""The payment service: users and their credit; the charge, one of the checkout saga's steps."""
