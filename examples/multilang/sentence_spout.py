"""A finite sentence spout written with Storm's storm.py (unmodified).

Emits `limit` sentences with string message ids, replays a failed id from inside
its fail handler (as Storm spouts often do), and, when `ledger` is set, appends
one line per acked id to that file so a test can check exactly-once acking. It
counts its acks and replays with Storm's metrics command (`storm.rpcMetrics`).
"""
import storm

SENTENCES = [
    "the cow jumped over the moon",
    "an apple a day keeps the doctor away",
    "four score and seven years ago",
    "snow white and the seven dwarfs",
    "i am at two with nature",
]


class SentenceSpout(storm.Spout):
    def initialize(self, conf, context):
        self.limit = int(conf.get("limit", 1000))
        self.next_id = 0
        self.task = context["taskid"]
        path = conf.get("ledger")
        self.ledger = open("%s.%d" % (path, self.task), "a", buffering=1) if path else None

    def emit_id(self, n):
        storm.emit([SENTENCES[n % len(SENTENCES)]], id="s-%d" % n)

    def nextTuple(self):
        if self.next_id < self.limit:
            self.emit_id(self.next_id)
            self.next_id += 1

    def ack(self, id):
        storm.rpcMetrics("acked", 1)
        if self.ledger:
            self.ledger.write("%s\n" % id)

    def fail(self, id):
        # Replay at once, from inside the fail handler.
        storm.rpcMetrics("replayed", 1)
        self.emit_id(int(id.split("-")[1]))


SentenceSpout().run()
