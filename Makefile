# make book: build the website; make test: every test. Both set up .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: book test lab bench grids setup clean

book: $(STAMP)
	$(BIN)/jupyter-book build -W -n --keep-going .
	@echo "The book: $(CURDIR)/_build/html/index.html"

test: $(STAMP)
	$(BIN)/python -m pytest -p no:cacheprovider \
		--nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg \
		tests chapters

# JupyterLab on chapters/, on 127.0.0.1 and offline, with this venv's kernel (ntkbook/lab.py):
# prints the URL with its token and serves until Ctrl-C.
lab: $(STAMP)
	$(BIN)/python -m ntkbook.lab

# Speed and memory figures (minutes; run on a quiet machine), written to benchmarks/results/.
# cnn_kernels.py times neural-tangents too when the interpreter has it (see its docstring).
bench: $(STAMP)
	$(BIN)/python benchmarks/analytic_ntk.py
	$(BIN)/python benchmarks/empirical_ntk.py
	$(BIN)/python benchmarks/empirical_cnn.py
	$(BIN)/python benchmarks/cnn_kernels.py --digits
	$(BIN)/python benchmarks/kernel_ridge.py
	$(BIN)/python benchmarks/float32_breakdown.py
	$(BIN)/python benchmarks/large_kernels.py  # about 5 min and 19 GB of memory at n = 40,000

# The stored grids of chapters 9 (about 30 min), 10 (about 12 min) and 8 (about 10 min),
# re-run by hand.
grids: $(STAMP)
	$(BIN)/python benchmarks/conv_digits.py
	$(BIN)/python benchmarks/beyond_lazy.py
	$(BIN)/python benchmarks/small_data.py

setup: $(STAMP)

# Re-runs only when the requirements or the package metadata change.
$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

clean:
	rm -rf _build
