"""Overlay cost on a 12-megapixel photo: colouring and encoding as JPEG, WebP and PNG."""
