"""Runnable architectures: our implementations of VAR (+ VQVAE), RAR (+ MaskGIT-VQGAN), behind one API."""
