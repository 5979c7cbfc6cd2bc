"Test-session settings: never touch the Hugging Face hub, keep torch to the machine's cores."
import os
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")
# the paper notebooks write to results_dir(): keep test runs out of the checkout's results/
import tempfile
os.environ.setdefault("SALMON_RESULTS", tempfile.mkdtemp(prefix="salmon-results-"))
