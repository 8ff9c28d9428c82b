"""The progress bar text for a job: queued, waiting for the model, step N/M with ETA.

Pure functions over `modules.jobs.Job` and `Runtime`, so the txt2img handler can poll
a job and tests can check the text without a browser.
"""

from __future__ import annotations

import html

from modules.jobs import Job


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = max(0, int(round(seconds)))
    minutes, secs = divmod(seconds, 60)
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def progress_text(runtime, job: Job) -> str:
    """What A1111 prints on its bar, e.g. "Batch 1/2, step 3/20, ETA 4s"."""
    if job.started is None:
        waiting = runtime.jobs.pending()
        return f"Waiting in queue ({waiting} ahead)..." if waiting > 1 else "Waiting..."
    if not runtime.ready.is_set():
        return "Loading model..."
    progress = job.progress
    if progress is None:
        return "Preparing..."
    parts = []
    if progress.job_count > 1:
        parts.append(f"Batch {progress.job_no + 1}/{progress.job_count}")
    parts.append(f"Step {progress.step}/{progress.total_steps}")
    eta = format_eta(job.eta_seconds())
    if eta:
        parts.append(f"ETA {eta}")
    return ", ".join(parts)


def progress_html(runtime, job: Job) -> str:
    """A bar whose width is the job's fraction, with the text on it."""
    percent = round(job.fraction() * 100)
    text = html.escape(progress_text(runtime, job))
    return (f'<div class="easel-progress" data-percent="{percent}">'
            f'<div class="easel-progress-bar" style="width:{percent}%"></div>'
            f'<span class="easel-progress-text">{text}</span></div>')


def idle_html() -> str:
    return '<div class="easel-progress easel-idle"></div>'
