"""Azure Monitor-style autoscale settings: what they hold (`model`), az's condition
grammar (`condition`) and the pure evaluator that turns metric values into instance
counts (`engine`). The metrics service stores and evaluates the settings; the
provisioner applies their decisions (docs/autoscale.md)."""
