"""Independent verification of the therapy engine: its own device, catheter-line and 24 h dose
models, random scenarios, and a runner that judges the engine by what the device truly did."""
