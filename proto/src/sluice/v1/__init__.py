"""Generated from proto/sluice/v1 by `make proto`; do not edit."""
