# uringloop developer targets. PY picks the interpreter (a venv's python, say):
#   make test PY=.venv/bin/python
PY ?= python
CC ?= cc

ASAN_TESTS = tests/test_engine_ops.py tests/test_engine_cancel_close.py \
             tests/test_engine_stress.py tests/test_engine_bad_input.py \
             tests/test_engine_wake.py tests/test_engine_native.py tests/test_sched.py \
             tests/test_loop_sock.py tests/test_loop_cancel.py tests/test_loop_api.py \
             tests/test_interrupted_wait.py tests/test_backend_modes.py \
             tests/test_engine_fd_reuse.py tests/test_loop_fds.py tests/test_engine_read_pool.py \
             tests/test_engine_nomem.py tests/test_threads.py tests/test_engine_dgram.py \
             tests/test_transport_core.py tests/test_transport_ccore.py tests/test_transport_send.py \
             tests/test_engine_recv_path.py tests/test_datagram_hot.py \
             tests/test_engine_pool_working_set.py tests/test_engine_idle_memory.py \
             tests/test_fork.py tests/test_transport_tls_core.py \
             tests/test_transport_tls_reentry.py tests/test_sched_reentry.py \
             tests/test_transport_stream_reentry.py tests/test_transport_dgram_reentry.py \
             tests/test_transport_pipe_reentry.py tests/test_engine_review2.py \
             tests/test_sock_review.py tests/test_sock_wide.py tests/test_subprocess_review.py tests/test_difffuzz.py \
             tests/test_enter_batch.py \
             tests/test_eof_close.py \
             tests/test_accept_setup.py \
             tests/test_nowait_ops.py tests/test_subfuzz.py tests/test_transport_lost_order.py \
             tests/test_subprocess_pipegrow.py tests/test_plain_signal_handler.py \
             tests/test_stream_feed.py \
             tests/test_write_gather.py tests/test_sock_recv_order.py tests/test_recv_spare.py \
             tests/test_review47.py tests/test_conn_shortcuts.py tests/test_conn_lost_core.py \
             tests/test_epoll_ctl_reuse.py tests/test_transport_memory.py tests/test_review48.py
# CPython itself is not ASan-built: its allocations look leaked, so leak
# detection stays off; any other ASan report aborts the test process. pytest
# captures sys.stdout/stderr only (--capture=sys), so a report written to fd 2
# reaches the log even when it aborts the process mid-test. An allocation too
# big to make returns NULL (CPython's MemoryError), as glibc's malloc does,
# instead of an ASan report: tests/test_sock_review.py asks for one (419).
ASAN_OPTIONS_RUN = detect_leaks=0:abort_on_error=1:allocator_may_return_null=1

.PHONY: build test test-guard list-guard-tests test-debug asan lint bench bench-net rsloop-env demo clean

## build: compile the extensions (cffi engine, C scheduler) in place
build:
	$(PY) setup.py build_ext --inplace -q

## test: build, then the whole suite (engine tests run on both backends)
test: build
	$(PY) -m pytest -q

## test-guard: engine and loop socket tests with pool guard mode on (URINGLOOP_GUARD=1):
## a pool buffer no one owns is PROT_NONE, so a stray kernel write fails the test
GUARD_TESTS = tests/test_engine_ops.py tests/test_engine_cancel_close.py \
              tests/test_engine_stress.py tests/test_engine_bad_input.py \
              tests/test_loop_sock.py tests/test_loop_cancel.py tests/test_backend_modes.py \
              tests/test_engine_dgram.py tests/test_engine_recv_path.py tests/test_engine_read_pool.py \
              tests/test_engine_pool_working_set.py tests/test_engine_idle_memory.py
test-guard: build
	URINGLOOP_GUARD=1 $(PY) -m pytest -q -p no:cacheprovider $(GUARD_TESTS)

list-guard-tests:
	@echo $(GUARD_TESTS)

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
	    $(PY) -m pytest -q -p no:cacheprovider --capture=sys $(ASAN_TESTS) || status=$$?; \
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

## bench-net: echo/HTTP/TLS/idle servers on every loop side by side (benchmarks/net_bench.py);
## BENCH_ARGS passes options, e.g. make bench-net BENCH_ARGS="--quick --workloads echo-1k-c100"
## (needs cc; wrk for HTTP: apt-get install -y wrk; matplotlib for the chart)
BENCH_ARGS ?=
bench-net: build
	@command -v wrk >/dev/null || echo "bench-net: wrk is not installed, the HTTP workloads will be skipped (apt-get update && apt-get install -y wrk)" >&2
	$(PY) benchmarks/net_bench.py $(BENCH_ARGS)

## rsloop-env: benchmarks/.rsloop-env/, Debian trixie's glibc and rsloop's manylinux_2_39
## wheel, so that the benchmarks can run rsloop on an older glibc (downloads; optional)
rsloop-env:
	$(PY) benchmarks/rsloop_env.py

## demo: the examples against the in-place build (aiohttp_hello.py needs aiohttp, tls_echo.py trustme)
demo: build
	PYTHONPATH=. $(PY) examples/echo.py
	PYTHONPATH=. $(PY) examples/echo_server.py streams --selftest
	PYTHONPATH=. $(PY) examples/aiohttp_hello.py
	PYTHONPATH=. $(PY) examples/tls_echo.py

clean:
	rm -rf build *.egg-info .pytest_cache .ruff_cache tests/_bin benchmarks/_build
	rm -f uringloop/_engine_cffi*.so uringloop/_engine_cffi.c uringloop/_engine_cffi.o uringloop/_sched*.so
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
