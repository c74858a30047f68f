"""The operator: Kopf handlers (thin) → reconcile/ (pure) → builders/ (pure manifests) → I/O."""
