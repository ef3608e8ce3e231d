"""Images: disk images, kernels and ramdisks servers boot from."""
