"""What a person sees: `toka status` and `toka demo` (rich)."""
