"""Background runs for the widgets: a job in a napari worker thread, its events on the GUI thread, a
progress bar, Cancel, and errors as napari notifications.

A job is a plain function from :mod:`cemkit.napari_plugin.jobs` called with ``on_event`` and ``cancel``;
``on_event`` is a Qt signal's ``emit``, so the widget's handler runs on the GUI thread. Cancel sets the
:class:`threading.Event` the job checks between two slabs or two training steps.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from magicgui.widgets import Container
from qtpy.QtCore import QObject, Signal

from cemkit.errors import CemkitError, RunCancelled
from cemkit.napari_plugin.fields import model_of_layer

log = logging.getLogger(__name__)


class _Events(QObject):
    event = Signal(object)


class _Refused:
    """What a job returns instead of raising a user error (napari would relay a raised one with a traceback)."""

    def __init__(self, error: CemkitError):
        self.error = error


def _guarded(job: Callable[..., Any], **kwargs: Any) -> Any:
    try:
        return job(**kwargs)
    except CemkitError as exc:  # bad input, a cancelled run: a message for the user, not a crash
        return _Refused(exc)


def notify_error(exc: BaseException) -> None:
    """Show ``exc`` as a napari error notification (a user error without its traceback)."""
    from napari.utils.notifications import show_error

    text = str(exc) if isinstance(exc, CemkitError) else f"{type(exc).__name__}: {exc}"
    show_error(f"cemkit: {text}")


class BackgroundRun:
    """One job at a time for a widget: start, cancel, and the callbacks on the GUI thread.

    Parameters
    ----------
    name : str
        Shown on the progress bar ("cemkit predict").
    on_event : callable
        ``on_event(event_dict)`` on the GUI thread for every event the job reports.
    on_status : callable
        ``on_status(text)``: a one-line state for the widget ("cancelled", the error, ...).
    """

    def __init__(self, name: str, on_event: Callable[[dict], None], on_status: Callable[[str], None]):
        self.name = name
        self._on_event = on_event
        self._on_status = on_status
        self._events = _Events()
        self._events.event.connect(self._event)
        self.cancel_event = threading.Event()
        self.worker = None
        self._progress = None

    @property
    def running(self) -> bool:
        return self.worker is not None

    def start(self, job: Callable[..., Any], on_done: Callable[[Any], None], **kwargs: Any) -> None:
        """Run ``job(on_event=..., cancel=..., **kwargs)`` in a worker thread; ``on_done(result)`` after."""
        from napari.qt.threading import create_worker
        from napari.utils import progress

        if self.running:
            raise CemkitError(f"{self.name} is already running: wait for it or cancel it")
        self.cancel_event = threading.Event()
        self._progress = progress(total=0, desc=self.name)
        worker = create_worker(_guarded, job=job, on_event=self._events.event.emit, cancel=self.cancel_event,
                               **kwargs, _start_thread=False,
                               _connect={"returned": lambda result: self._finish(on_done, result),
                                         "errored": self._failed, "finished": self._cleanup})
        self.worker = worker
        self._on_status("running")
        worker.start()

    def cancel(self, why: str = "cancelled") -> None:
        """Ask the job to stop (it cleans up its partial output); no-op when nothing runs."""
        if self.running and not self.cancel_event.is_set():
            log.info("%s: %s", self.name, why)
            self.cancel_event.set()
            self._on_status(f"cancelling ({why})")

    # -- GUI-thread callbacks --------------------------------------------------------------
    def _event(self, event: dict) -> None:
        kind = event.get("kind")
        if kind in ("progress", "train"):
            done, total, bar = event["done" if kind == "progress" else "step"], event["total"], self._progress
            if bar is not None and total:
                if bar.total != total:  # a new pass (xz, yz) or a new step plan
                    bar.total, bar.n = total, 0
                bar.set_description(f"{self.name}: {event.get('stage', 'training')}")
                bar.update(max(0, done - bar.n))
        try:
            self._on_event(event)
        except RuntimeError:  # the widget was deleted (viewer closed) while the job ran
            pass

    def _finish(self, on_done: Callable[[Any], None], result: Any) -> None:
        if isinstance(result, _Refused):
            self._failed(result.error)
            return
        try:
            on_done(result)
        except RuntimeError:
            pass
        except CemkitError as exc:
            notify_error(exc)

    def _failed(self, exc: BaseException) -> None:
        """A user error or a cancelled run (from :func:`_guarded`), or a bug (napari also shows its traceback)."""
        try:
            if isinstance(exc, RunCancelled):
                self._on_status("cancelled: nothing was written")
                return
            self._on_status(f"failed: {exc}")
        except RuntimeError:
            pass
        if isinstance(exc, CemkitError):
            notify_error(exc)

    def _cleanup(self) -> None:
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        self.worker = None


class RunWidget(Container):
    """What the Predict and Adapt widgets share: Run/Cancel buttons and a status line around a
    :class:`BackgroundRun` that stops when a layer it uses is removed or the widget is destroyed (the viewer
    closed), and the model field filled from the image layer's metadata.

    A subclass creates ``model``, ``image``, ``run_button``, ``cancel_button`` and ``status``, calls
    ``Container.__init__``, then :meth:`start_runs`; it implements ``run()`` and ``_event(event)``.
    """

    def start_runs(self, viewer, name: str) -> None:
        self.viewer = viewer
        self.job = BackgroundRun(name, self._event, self._status)
        self._in_use: tuple = ()  # the layers of the run in progress
        self.run_button.changed.connect(lambda *_: self.run())
        self.cancel_button.changed.connect(lambda *_: self.job.cancel())
        self.image.changed.connect(self._model_from_layer)
        viewer.layers.events.removed.connect(self._layer_removed)
        self.native.destroyed.connect(self.job.cancel_event.set)
        self._model_from_layer()

    def launch(self, job: Callable[..., Any], on_done: Callable[[Any], None], in_use: tuple, **kwargs: Any) -> bool:
        """Start ``job`` (see :meth:`BackgroundRun.start`) on the layers ``in_use``; True."""
        self._in_use = in_use
        self.job.start(job, on_done, **kwargs)
        self._buttons(running=True)
        return True

    def refuse(self, exc: BaseException) -> bool:
        """A run that does not start: the notification and the status line say why; False."""
        notify_error(exc)
        self._status(f"not started: {exc}")
        return False

    def _status(self, text: str) -> None:
        self.status.value = text
        if not text.startswith(("running", "cancelling")):
            self._buttons(running=False)

    def _buttons(self, running: bool) -> None:
        self.run_button.enabled = not running
        self.cancel_button.enabled = running

    def _layer_removed(self, event) -> None:
        if self.job.running and any(event.value is layer for layer in self._in_use):
            self.job.cancel(f"layer {event.value.name!r} was removed")

    def _model_from_layer(self, *_args) -> None:
        spec = model_of_layer(self.image.value) if self.image.value is not None else None
        if spec and not self.model.value:
            self.model.value = spec
