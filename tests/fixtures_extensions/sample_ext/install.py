"""Records that it ran (tests check it runs once per change)."""
from pathlib import Path

runs = Path("install_runs.txt")
runs.write_text(runs.read_text() + "x" if runs.exists() else "x")
print("sample_ext installed")
