"""Pure manifest builders: given typed models, the exact objects the operator creates."""
