"""The official `pusher` PyPI SDK (3.3.x) against a real `ringcast` binary.

Drives trigger, trigger_batch, channels_info, channel_info, users_info, send_to_user and
terminate_user_connections (the SDK's path without /apps/{id}), plus its channel/user
signatures (authenticate, authenticate_user), and asserts what raw WebSocket clients receive.
The Python SDK sends body_md5 on every request, GETs included, and signs with a sorted query:
both must be accepted.

Run: python -m pytest -q tests/python  (needs target/debug/ringcast, or RINGCAST_BIN).
Only 127.0.0.1 is used; every wait is bounded.
"""

import json
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
import uuid

import pusher
import pytest
import websocket

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
WAIT = 10.0
QUIET = 1.0

# The Python SDK only accepts numeric app ids.
APP_ID = "4242"
KEY = "py-key"
SECRET = "py-secret"
CONFIG = f"""
[[apps]]
id = "{APP_ID}"
key = "{KEY}"
secret = "{SECRET}"
secrets = ["py-old-secret"]

[[apps]]
id = "777"
key = "small-key"
secret = "small-secret"
max_event_bytes = 64
"""


def ringcast_bin():
    env = os.environ.get("RINGCAST_BIN")
    if env:
        return env if os.path.isabs(env) else os.path.join(REPO, env)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
    if not os.path.isabs(target):
        target = os.path.join(REPO, target)
    return os.path.join(target, "debug", "ringcast")


class Server:
    def __init__(self, extra_args=()):
        binary = ringcast_bin()
        if not os.path.exists(binary):
            raise RuntimeError(f"{binary} not found: run `cargo build --bin ringcast`")
        self.tmp = tempfile.TemporaryDirectory(prefix="ringcast-py-")
        cfg = os.path.join(self.tmp.name, "ringcast.toml")
        with open(cfg, "w") as f:
            f.write(CONFIG)
        self.proc = subprocess.Popen(
            [binary, "--listen", "127.0.0.1:0", "--config", cfg,
             "--data-dir", os.path.join(self.tmp.name, "data"), *extra_args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        self.lines = []
        self.stderr = []
        self._ready = threading.Event()
        threading.Thread(target=self._drain, args=(self.proc.stdout, self.lines), daemon=True).start()
        threading.Thread(target=self._drain, args=(self.proc.stderr, self.stderr), daemon=True).start()
        deadline = time.time() + 15
        self.port = None
        while time.time() < deadline and self.port is None:
            for line in list(self.lines):
                m = re.search(r"listening on (127\.0\.0\.1):(\d+)", line)
                if m:
                    self.port = int(m.group(2))
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        if self.port is None:
            self.stop()
            raise RuntimeError(f"ringcast did not start: {self.lines} {self.stderr[-20:]}")

    def _drain(self, pipe, into):
        for line in pipe:
            into.append(line)

    def sdk(self, app_id=APP_ID, key=KEY, secret=SECRET, port=None):
        return pusher.Pusher(
            app_id=app_id,
            key=key,
            secret=secret,
            host="127.0.0.1",
            port=port or self.port,
            ssl=False,
            timeout=5,
        )

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.tmp.cleanup()


class Ws:
    """A raw WebSocket client speaking Pusher protocol 7."""

    def __init__(self, port, key=KEY):
        self.ws = websocket.create_connection(
            f"ws://127.0.0.1:{port}/app/{key}?protocol=7&client=py-test&version=1.0",
            timeout=WAIT,
        )
        first = self.recv()
        assert first["event"] == "pusher:connection_established", first
        self.socket_id = json.loads(first["data"])["socket_id"]

    def send(self, obj):
        self.ws.send(json.dumps(obj))

    def recv(self, timeout=WAIT):
        self.ws.settimeout(timeout)
        while True:
            opcode, data = self.ws.recv_data(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_TEXT:
                return json.loads(data.decode())
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                raise ConnectionError(f"closed: {close_code(data)}")

    def recv_event(self, event, timeout=WAIT):
        deadline = time.time() + timeout
        while time.time() < deadline:
            m = self.recv(max(0.05, deadline - time.time()))
            if m.get("event") == event:
                return m
        raise TimeoutError(f"no {event}")

    def subscribe(self, channel, auth=None, channel_data=None):
        data = {"channel": channel, "auth": auth or ""}
        if channel_data is not None:
            data["channel_data"] = channel_data
        self.send({"event": "pusher:subscribe", "data": data})
        m = self.recv_event("pusher_internal:subscription_succeeded")
        assert m["channel"] == channel
        return m

    def assert_nothing_pending(self):
        """A ping/pong barrier: nothing was queued for this client before the pong."""
        self.send({"event": "pusher:ping", "data": {}})
        m = self.recv()
        assert m["event"] == "pusher:pong", f"expected nothing, got {m}"

    def recv_close(self, timeout=WAIT):
        self.ws.settimeout(timeout)
        while True:
            opcode, data = self.ws.recv_data(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                return close_code(data)

    def close(self):
        try:
            self.ws.close(timeout=1)
        except Exception:
            pass


def close_code(payload):
    return int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None


def uniq(prefix):
    return f"{prefix}{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def server():
    s = Server()
    yield s
    s.stop()


@pytest.fixture
def clients(server):
    opened = []

    def make():
        c = Ws(server.port)
        opened.append(c)
        return c

    yield make
    for c in opened:
        c.close()


def test_trigger_delivers_json_encoded_data(server, clients):
    sdk = server.sdk()
    name = uniq("py-")
    c = clients()
    c.subscribe(name)
    assert sdk.trigger(name, "order-shipped", {"id": 7, "items": ["a", "b"]}) == {}
    m = c.recv_event("order-shipped")
    assert m["channel"] == name
    assert isinstance(m["data"], str)
    assert json.loads(m["data"]) == {"id": 7, "items": ["a", "b"]}
    # A string is delivered verbatim.
    assert sdk.trigger(name, "raw", "not json") == {}
    assert c.recv_event("raw")["data"] == "not json"
    c.assert_nothing_pending()


def test_trigger_several_channels_and_socket_id_exclusion(server, clients):
    sdk = server.sdk()
    a_name, b_name = uniq("py-a-"), uniq("py-b-")
    a, b = clients(), clients()
    for c in (a, b):
        c.subscribe(a_name)
    b.subscribe(b_name)
    assert sdk.trigger([a_name, b_name], "multi", {"x": 1}, socket_id=a.socket_id) == {}
    got = sorted([b.recv_event("multi")["channel"], b.recv_event("multi")["channel"]])
    assert got == sorted([a_name, b_name])
    a.assert_nothing_pending()
    b.assert_nothing_pending()


def test_trigger_batch_in_order(server, clients):
    sdk = server.sdk()
    name = uniq("py-batch-")
    c = clients()
    c.subscribe(name)
    batch = [{"channel": name, "name": "b", "data": {"i": i}} for i in range(10)]
    assert sdk.trigger_batch(batch) == {}
    assert [json.loads(c.recv_event("b")["data"])["i"] for _ in range(10)] == list(range(10))
    c.assert_nothing_pending()


def test_private_and_presence_signatures_from_the_sdk_subscribe(server, clients):
    """PY's authenticate() emits channel_data with spaces: verified as sent, not re-serialized."""
    sdk = server.sdk()
    c = clients()
    priv = uniq("private-py-")
    c.subscribe(priv, **sdk.authenticate(priv, c.socket_id))
    pres = uniq("presence-py-")
    auth = sdk.authenticate(pres, c.socket_id, {"user_id": 10, "user_info": {"name": "Mr. Channels"}})
    assert ", " in auth["channel_data"]
    m = c.subscribe(pres, **auth)
    presence = json.loads(m["data"])["presence"]
    assert presence["ids"] == ["10"]
    assert presence["hash"] == {"10": {"name": "Mr. Channels"}}


def test_channels_info_channel_info_and_users_info(server, clients):
    """GETs: PY adds body_md5 of the empty body to every one."""
    sdk = server.sdk()
    pres = uniq("presence-info-")
    pub = uniq("pubinfo-")
    conns = [clients() for _ in range(3)]
    for c, uid in zip(conns, ["u1", "u1", "u2"]):
        c.subscribe(pres, **sdk.authenticate(pres, c.socket_id, {"user_id": uid, "user_info": {"n": uid}}))
    conns[0].subscribe(pub)

    listed = sdk.channels_info(prefix_filter="presence-info-", attributes=["user_count"])
    assert listed["channels"][pres] == {"user_count": 2}
    listed = sdk.channels_info(prefix_filter=pub, attributes=["subscription_count"])
    assert listed == {"channels": {pub: {"subscription_count": 1}}}
    assert pub in sdk.channels_info()["channels"]

    info = sdk.channel_info(pres, ["user_count", "subscription_count"])
    assert info == {"occupied": True, "user_count": 2, "subscription_count": 3}
    assert sdk.channel_info(uniq("nobody-")) == {"occupied": False}

    users = sdk.users_info(pres)
    assert sorted(u["id"] for u in users["users"]) == ["u1", "u2"]

    with pytest.raises(pusher.errors.PusherBadRequest):
        sdk.channel_info(pub, ["user_count"])
    with pytest.raises(pusher.errors.PusherBadRequest):
        sdk.users_info(pub)
    with pytest.raises(pusher.errors.PusherBadRequest):
        sdk.channels_info(attributes=["user_count"])


def signin(sdk, c, user_id):
    auth = sdk.authenticate_user(c.socket_id, {"id": user_id, "user_info": {"name": user_id}})
    c.send({"event": "pusher:signin", "data": auth})
    ok = c.recv_event("pusher:signin_success")
    assert json.loads(ok["data"]["user_data"])["id"] == user_id


def test_send_to_user(server, clients):
    sdk = server.sdk()
    uid = uniq("user-")
    u1, u2, other = clients(), clients(), clients()
    signin(sdk, u1, uid)
    signin(sdk, u2, uid)
    signin(sdk, other, uniq("other-"))
    assert sdk.send_to_user(uid, "note", {"hi": 1}) == {}
    for c in (u1, u2):
        m = c.recv_event("note")
        assert m["channel"] == f"#server-to-user-{uid}"
        assert json.loads(m["data"]) == {"hi": 1}
    other.assert_nothing_pending()


def test_terminate_user_connections_uses_the_path_without_apps(server, clients):
    sdk = server.sdk()
    uid = uniq("victim-")
    v1, v2, bystander = clients(), clients(), clients()
    signin(sdk, v1, uid)
    signin(sdk, v2, uid)
    signin(sdk, bystander, uniq("ok-"))
    assert sdk.terminate_user_connections(uid) == {}
    assert v1.recv_close() == 4009
    assert v2.recv_close() == 4009
    bystander.assert_nothing_pending()


def test_rotated_secret_still_signs(server, clients):
    old = server.sdk(secret="py-old-secret")
    name = uniq("rot-")
    c = clients()
    c.subscribe(name)
    assert old.trigger(name, "e", "1") == {}
    assert c.recv_event("e")["data"] == "1"


def test_refusals_map_to_sdk_errors(server, clients):
    name = uniq("neg-")
    c = clients()
    c.subscribe(name)
    with pytest.raises(pusher.errors.PusherBadAuth):
        server.sdk(secret="wrong").trigger(name, "e", "1")
    with pytest.raises(pusher.errors.PusherBadAuth):
        server.sdk(secret="wrong").channels_info()
    # Unknown app id: 404.
    with pytest.raises(pusher.errors.PusherBadStatus, match="404"):
        server.sdk(app_id="999").trigger(name, "e", "1")
    # The small app allows 64 bytes of data: 413.
    small = server.sdk(app_id="777", key="small-key", secret="small-secret")
    with pytest.raises(pusher.errors.PusherBadStatus, match="413"):
        small.trigger(name, "e", "x" * 65)
    c.assert_nothing_pending()


def test_separate_api_listener():
    s = Server(extra_args=("--api-listen", "127.0.0.1:0"))
    try:
        deadline = time.time() + 5
        api_port = None
        while time.time() < deadline and api_port is None:
            for line in list(s.lines):
                m = re.search(r"HTTP API on 127\.0\.0\.1:(\d+)", line)
                if m:
                    api_port = int(m.group(1))
            time.sleep(0.02)
        assert api_port and api_port != s.port, s.lines
        c = Ws(s.port)
        name = uniq("sep-")
        c.subscribe(name)
        assert s.sdk(port=api_port).trigger(name, "e", "via-api") == {}
        assert c.recv_event("e")["data"] == "via-api"
        with pytest.raises(pusher.errors.PusherBadStatus, match="404"):
            s.sdk().trigger(name, "e", "public-port")
        c.assert_nothing_pending()
        c.close()
    finally:
        s.stop()
