"""Pure reconcile plans: from spec and observed objects to the actions and the status."""
