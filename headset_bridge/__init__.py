"""headset_bridge."""
