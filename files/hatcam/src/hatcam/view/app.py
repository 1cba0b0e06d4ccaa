"""The view's routes (listed in ``create_app``, at the end).

Every answer is JSON, a playlist, or bytes; every failure is ``{"error": "..."}`` with
a 4xx/5xx status: the Blob SDK's and Redis's errors are put in words here, once, and the
server keeps serving. Blocking calls (the Blob SDK, redis-py) run in the thread pool.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

from azure.core.exceptions import AzureError, HttpResponseError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .. import config
from ..blob import describe, explain
from ..fetch import listing
from ..segment import iso, parse_iso
from . import media, timeline
from .export import Exports
from .playlist import LiveParts, vod
from .stills import RedisDown, RedisReader

log = logging.getLogger("hatcam.view")

STATIC = Path(__file__).parent / "static"
HLS = "application/vnd.apple.mpegurl"
COOKIE = "hatcam_view_token"
NO_STORE = {"Cache-Control": "no-store"}
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
DAY_KEPT_TODAY = 5.0  # seconds a timeline answer is reused: today's (it grows)
DAY_KEPT_PAST = 60.0  # an earlier day's (a camera back online may still upload to it)


@dataclass
class View:
    """What the routes share: the container, the keys, Redis, live parts, exports."""

    client: object  # azure ContainerClient
    ring: object  # proof.KeyRing
    exports: Exports
    redis: RedisReader | None = None
    token: str | None = None
    live: LiveParts = field(default_factory=LiveParts)
    checked: dict = field(default_factory=dict)  # signature checks, by blob name and etag
    days: dict = field(default_factory=dict)  # (device, day): (when, timeline answer)
    checking: dict = field(default_factory=dict)  # (device, day): its background full listing
    fixes: dict = field(default_factory=dict)  # (device, day): what its last check found
    static: Path = STATIC
    segment_seconds: float = 10.0  # HATCAM_SEGMENT_SECONDS: when a camera counts as silent
    now: object = field(default=lambda: datetime.now(UTC))


class Problem(Exception):
    """A request that cannot be answered: its status and one line for the person."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=NO_STORE)


def blob_problem(exc: Exception, action: str, where: str) -> Problem:
    """The Blob SDK's error as a Problem: 404s stay 404, a refusal is 403, else 502."""
    status = getattr(exc, "status_code", None)
    code = 404 if status == 404 else 403 if status == 403 else 502
    needs = "rl" if action == "listing" else "r"
    return Problem(code, f"{where}: {explain(exc, action, needs, 'rl')}")


def _device(request: Request) -> str:
    device = request.query_params.get("device", "")
    if not config.valid_device(device):
        raise Problem(400, f"device: {device!r} is not a device name")
    return device


def _moment(text: str | None, name: str) -> datetime:
    try:
        return parse_iso(text or "")
    except ValueError:
        raise Problem(
            400, f"{name}: {text!r} is not a time (use ISO 8601, e.g. 2026-11-30T14:32:05Z)"
        ) from None


async def _blocking(view: View, fn, *args, action: str = "listing"):
    """``fn(*args)`` in the thread pool, the Blob SDK's errors as Problems naming the
    account and container (never the key or the signature)."""
    try:
        return await run_in_threadpool(fn, *args)
    except HttpResponseError as exc:
        raise blob_problem(exc, action, describe(view.client)) from None
    except AzureError as exc:
        raise Problem(502, f"{describe(view.client)}: {explain(exc, action)}") from None


# --- devices, timeline ---------------------------------------------------------------


async def devices(request: Request) -> Response:
    view: View = request.app.state.view
    now = view.now()
    problems: list[str] = []
    names = (await _blocking(view, listing.discover, view.client))[0]
    health: dict = {}
    if view.redis is not None:
        try:
            names = sorted(set(names) | set(await run_in_threadpool(view.redis.publishing)))
            health = await run_in_threadpool(view.redis.health, names)
        except RedisDown as exc:
            problems.append(str(exc))
    answer = []
    for name in names:
        newest = await _blocking(view, timeline.newest, view.client, name, now)
        entry = {"device": name, "newest": iso(newest) if newest else None, "health": None}
        if name in health:
            published = health[name]
            if published is not None:
                record, ttl = published
                entry["health"] = {**record.__dict__, "ttl_s": ttl}
            entry["silent"] = published is None
        else:  # no Redis (or it is down): the cloud's word alone
            quiet = 2 * view.segment_seconds + 30  # no blob for two segments and then some
            entry["silent"] = newest is None or (now - newest).total_seconds() > quiet
        answer.append(entry)
    return JSONResponse({"devices": answer, "problems": problems}, headers=NO_STORE)


async def day_timeline(request: Request) -> Response:
    view: View = request.app.state.view
    device = _device(request)
    text = request.query_params.get("day") or view.now().date().isoformat()
    try:
        on = date.fromisoformat(text)
    except ValueError:
        raise Problem(400, f"day: {text!r} is not a date (use YYYY-MM-DD)") from None
    # A day's listing takes the service a while (17,280 blobs for a live day of 10 s
    # segments): the first answer comes from the day's index and is checked by one full
    # listing in the background (the page asks again until the answer says "checked").
    # Answers are kept a little, shorter for a day that may still grow.
    keep = DAY_KEPT_TODAY if on >= view.now().date() else DAY_KEPT_PAST
    key = (device, on)
    kept = view.days.get(key)
    if kept is not None and (time.monotonic() - kept[0] < keep or key in view.checking):
        return JSONResponse(kept[1], headers=NO_STORE)
    notes: list[str] = []
    fixes = view.fixes.get(key)
    answer, quick = await _blocking(
        view, timeline.quick_day, view.client, device, on, view.ring, notes, view.checked, fixes
    )
    if not answer["segments"]:  # an empty day, or a device this container never saw?
        names = (await _blocking(view, listing.discover, view.client))[0]
        if device not in names:
            raise Problem(404, f"{device}: no footage of this device in {describe(view.client)}")
    answer = {**answer, "problems": notes}
    view.days = {k: v for k, v in view.days.items() if time.monotonic() - v[0] < DAY_KEPT_PAST}
    view.fixes = {k: v for k, v in view.fixes.items() if k in view.days}
    view.days[key] = (time.monotonic(), answer)
    if quick is not None and key not in view.checking:
        view.checking[key] = asyncio.create_task(_check_day(view, quick, answer))
    return JSONResponse(answer, headers=NO_STORE)


async def _check_day(view: View, quick: timeline.Quick, answer: dict) -> None:
    """The full listing of a quick answer's day, in the background: its answer (checked,
    with what the day index got wrong) replaces the kept one, and what it found corrects
    the day's next quick answers. If the listing fails, the quick answer stays, saying
    so, until it is asked for again after it expires."""
    key = (quick.device, quick.on)
    notes: list[str] = []
    try:
        full, view.fixes[key] = await _blocking(
            view, timeline.checked_day, view.client, *key, view.ring, quick, notes, view.checked
        )
        view.days[key] = (time.monotonic(), {**full, "problems": notes})
    except Problem as exc:
        failed = f"the day index's answer is not checked: the listing failed ({exc.message})"
        when = view.days[key][0] if key in view.days else time.monotonic()
        view.days[key] = (when, {**answer, "problems": [*answer["problems"], failed]})
    except Exception:
        log.exception("checking the timeline of %s for %s failed", *key)
    finally:
        view.checking.pop(key, None)


# --- playlists, media ----------------------------------------------------------------


async def play(request: Request) -> Response:
    view: View = request.app.state.view
    device = _device(request)
    at = _moment(request.query_params.get("at"), "at")
    run = await _blocking(view, timeline.around, view.client, device, at)
    if run is None:
        raise Problem(404, f"{device} recorded nothing at {iso(at)}")
    return Response(vod(run, at), media_type=HLS, headers=NO_STORE)


async def live(request: Request) -> Response:
    view: View = request.app.state.view
    device = _device(request)
    segs = await _blocking(view, timeline.recent, view.client, device, view.now())
    if not segs:
        raise Problem(404, f"{device}: nothing of this device in {describe(view.client)}")
    run = timeline.runs_of(segs)[-1]
    return Response(view.live.playlist(device, run), media_type=HLS, headers=NO_STORE)


async def blob_bytes(request: Request) -> Response:
    view: View = request.app.state.view
    blob = request.path_params["blob"]
    kind = media.media_type(blob)
    if kind is None or blob.startswith("/") or ".." in blob.split("/"):
        raise Problem(404, f"{blob}: not a segment (only .ts blobs are served)")
    try:
        wanted = media.parse_range(request.headers.get("range"))
        down, first, count, size = await _blocking(
            view, media.open_range, view.client, blob, wanted, action="download"
        )
    except (media.RangeError, Problem) as exc:
        if isinstance(exc, Problem) and "416" not in exc.message:
            raise
        return Response(status_code=416, headers={"Content-Range": "bytes */*"})
    headers = {"Accept-Ranges": "bytes", "Content-Length": str(count), **NO_STORE}
    status = 200
    if wanted is not None:
        status = 206
        headers["Content-Range"] = f"bytes {first}-{first + count - 1}/{size}"
    return StreamingResponse(down.chunks(), status_code=status, media_type=kind, headers=headers)


# --- stills --------------------------------------------------------------------------


def _redis(view: View) -> RedisReader:
    if view.redis is None:
        raise Problem(503, "REDIS_URL is not set: stills and health need the cameras' Redis")
    return view.redis


async def stills(request: Request) -> Response:
    view: View = request.app.state.view
    device = request.query_params.get("device") or None
    if device is not None and not config.valid_device(device):
        raise Problem(400, f"device: {device!r} is not a device name")
    if view.redis is None:
        return JSONResponse({"stills": [], "problems": ["REDIS_URL is not set: no stills"]})
    try:
        found = await run_in_threadpool(view.redis.stills, device)
    except RedisDown as exc:
        return JSONResponse({"stills": [], "problems": [str(exc)]}, headers=NO_STORE)
    return JSONResponse({"stills": found, "problems": []}, headers=NO_STORE)


async def still_image(request: Request) -> Response:
    view: View = request.app.state.view
    key = request.path_params["key"]
    if not key.startswith("image:"):
        raise Problem(404, f"{key}: not a still (their keys are image:<unix seconds>)")
    try:
        data = await run_in_threadpool(_redis(view).image, key)
    except RedisDown as exc:
        raise Problem(503, str(exc)) from None
    if data is None:
        raise Problem(404, f"{key}: no such still (expired?)")
    return Response(data, media_type="image/jpeg", headers=NO_STORE)


# --- export --------------------------------------------------------------------------


async def export_start(request: Request) -> Response:
    view: View = request.app.state.view
    try:
        body = await request.json()
    except ValueError:
        raise Problem(400, 'body: not JSON (send {"device", "start", "end"})') from None
    if not isinstance(body, dict):
        raise Problem(400, 'body: not an object (send {"device", "start", "end"})')
    device = body.get("device")
    if not isinstance(device, str) or not config.valid_device(device):
        raise Problem(400, f"device: {device!r} is not a device name")
    start, end = _moment(body.get("start"), "start"), _moment(body.get("end"), "end")
    if start >= end:
        raise Problem(400, f"start {iso(start)} is not before end {iso(end)}")
    return JSONResponse({"job": view.exports.start(device, start, end)}, status_code=202)


def _job(request: Request):
    job = request.app.state.view.exports.get(request.path_params["job"])
    if job is None:
        raise Problem(404, f"no export job {request.path_params['job']!r}")
    return job


async def export_state(request: Request) -> Response:
    return JSONResponse(_job(request).to_dict(), headers=NO_STORE)


async def export_file(request: Request) -> Response:
    job = _job(request)
    name = request.path_params["name"]
    if name not in job.files:
        raise Problem(404, f"{name}: not a file of this export")
    return FileResponse(job.out / name, media_type="video/mp4", filename=name)


# --- the page ------------------------------------------------------------------------


async def index(request: Request) -> Response:
    page = request.app.state.view.static / "index.html"
    if not page.is_file():
        raise Problem(404, "the page (static/index.html) is not installed")
    return FileResponse(page, headers=NO_STORE)


class Guard:
    """Errors in words, and the access token on every request when there is one:
    ``?token=`` (then a cookie, so the player's requests carry it) or a Bearer header."""

    def __init__(self, app, view: View):
        self.app, self.view = app, view

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        token = self.view.token
        given = None
        if not token and request.url.hostname not in LOOPBACK_NAMES:
            # Served to this computer only: a web page whose own name points at 127.0.0.1
            # (DNS rebinding) must not get the footage through the browser.
            response = error(403, "this view answers to 127.0.0.1 or localhost only")
            return await response(scope, receive, send)
        if token:
            given = request.query_params.get("token")
            header = request.headers.get("authorization", "")
            offered = given or request.cookies.get(COOKIE) or header.removeprefix("Bearer ")
            if not hmac.compare_digest(offered.encode(), token.encode()):
                response = error(401, "an access token is needed: open the link with ?token=")
                return await response(scope, receive, send)
        sent = False

        async def send_cookie(message):
            nonlocal sent
            if message["type"] == "http.response.start" and given:
                cookie = f"{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"
                message.setdefault("headers", []).append((b"set-cookie", cookie.encode()))
            sent = sent or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_cookie)
        except Problem as exc:
            if not sent:
                await error(exc.status, exc.message)(scope, receive, send_cookie)
        except Exception as exc:  # the server keeps serving, and says what happened
            log.exception("%s %s failed", scope.get("method"), scope.get("path"))
            if not sent:
                what = f"{type(exc).__name__}: {str(exc)[:200]}"
                await error(500, f"the view failed: {what}")(scope, receive, send_cookie)


def create_app(view: View) -> Starlette:
    routes = [
        Route("/", index),
        Route("/api/devices", devices),
        Route("/api/timeline", day_timeline),
        Route("/hls/play.m3u8", play),
        Route("/hls/live.m3u8", live),
        Route("/media/{blob:path}", blob_bytes),
        Route("/api/stills", stills),
        Route("/api/stills/{key}.jpg", still_image),
        Route("/api/export", export_start, methods=["POST"]),
        Route("/api/export/{job}", export_state),
        Route("/api/export/{job}/file/{name}", export_file),
        Mount("/static", StaticFiles(directory=view.static, check_dir=False), name="static"),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(Guard, view=view)])
    app.state.view = view
    return app
