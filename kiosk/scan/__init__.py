"""Barcode scanning: locate (find and rectify candidates), decode (zxing-cpp), payload (identity fields),
wedge (USB keyboard-wedge scanners). Decoded text is patient data: printed by `kiosk scan`, never logged."""
