"""Where the shared fixtures and data live: ``../shared`` beside the repository root."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
FIXTURES = SHARED / "fixtures"
DATA = SHARED / "data"
LLADA_TINY = FIXTURES / "llada_tiny"
DREAM_TINY = FIXTURES / "dream_tiny"
