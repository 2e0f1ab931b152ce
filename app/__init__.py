"""wajah: the service that composes `models/` and `index/` into a KYC face-match API."""
