# uringloop developer targets. PY picks the interpreter (a venv's python, say):
#   make test PY=.venv/bin/python
PY ?= python
CC ?= cc

ASAN_TESTS = tests/test_engine_ops.py tests/test_engine_cancel_close.py \
             tests/test_engine_stress.py tests/test_engine_bad_input.py \
             tests/test_sched.py tests/test_loop_sock.py tests/test_engine_native.py \
             tests/test_engine_fd_reuse.py tests/test_loop_fds.py
# CPython itself is not ASan-built: its allocations look leaked, so leak
# detection stays off; any other ASan report aborts the test process.
ASAN_OPTIONS_RUN = detect_leaks=0:abort_on_error=1

.PHONY: build test test-epoll test-debug asan lint bench demo clean

## build: compile the extensions (cffi engine, C scheduler) in place
build:
	$(PY) setup.py build_ext --inplace -q

## test: build, then the whole suite (engine tests run on both backends)
test: build
	$(PY) -m pytest -q

## test-epoll: the suite with URINGLOOP_BACKEND=epoll (auto-backend tests then see epoll)
test-epoll: build
	URINGLOOP_BACKEND=epoll $(PY) -m pytest -q

## test-debug: the suite with PYTHONASYNCIODEBUG=1: every loop starts in debug mode,
## so the stock Python turn and checks run where the C fast paths would
test-debug: build
	PYTHONASYNCIODEBUG=1 $(PY) -m pytest -q

## asan: engine and scheduler under AddressSanitizer, then rebuild normally (even on failure)
asan:
	UL_SANITIZE=address $(PY) setup.py build_ext --inplace --force -q
	@libasan="$$($(CC) -print-file-name=libasan.so)"; \
	if [ ! -e "$$libasan" ]; then \
	    echo "asan: $(CC) has no libasan.so (install libasan for this compiler)" >&2; \
	    $(PY) setup.py build_ext --inplace --force -q; exit 1; \
	fi; \
	if ! ldd uringloop/_engine_cffi*.so | grep -q libasan || \
	   ! ldd uringloop/_sched*.so | grep -q libasan; then \
	    echo "asan: the extensions are not ASan-built" >&2; \
	    $(PY) setup.py build_ext --inplace --force -q; exit 1; \
	fi; \
	status=0; \
	echo "asan: LD_PRELOAD=$$libasan ASAN_OPTIONS=$(ASAN_OPTIONS_RUN)"; \
	LD_PRELOAD="$$libasan" ASAN_OPTIONS=$(ASAN_OPTIONS_RUN) \
	    $(PY) -m pytest -q -p no:cacheprovider $(ASAN_TESTS) || status=$$?; \
	echo "asan: rebuilding the normal extension"; \
	$(PY) setup.py build_ext --inplace --force -q || status=$$?; \
	exit $$status

## lint: ruff check
lint:
	$(PY) -m ruff check .

## bench: side-by-side engine measurements (no assertions)
bench: build
	$(PY) benchmarks/engine_bench.py
	$(PY) benchmarks/loop_bench.py

## demo: the examples against the in-place build (aiohttp_hello.py needs aiohttp, tls_echo.py trustme)
demo: build
	PYTHONPATH=. $(PY) examples/echo.py
	PYTHONPATH=. $(PY) examples/echo_server.py streams --selftest
	PYTHONPATH=. $(PY) examples/aiohttp_hello.py
	PYTHONPATH=. $(PY) examples/tls_echo.py

clean:
	rm -rf build *.egg-info .pytest_cache .ruff_cache tests/_bin
	rm -f uringloop/_engine_cffi*.so uringloop/_engine_cffi.c uringloop/_engine_cffi.o uringloop/_sched*.so
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
