"""A pass-through bolt (storm.py) that breaks itself once, for the failure tests.

`sabotage` is `exit` (the process dies), `hang` (it stops answering) or `garbage`
(it writes something that is not a multilang message). It strikes on input number
`after`, in the first incarnation only: a marker file in the working directory
tells later incarnations to behave.
"""
import os
import sys
import time

import storm


class Sabotage(storm.BasicBolt):
    def initialize(self, conf, context):
        self.mode = conf.get("sabotage", "")
        self.after = int(conf.get("after", 100))
        self.marker = "sabotaged-%s-%d" % (self.mode, context["taskid"])
        self.armed = bool(self.mode) and not os.path.exists(self.marker)
        self.seen = 0

    def process(self, tup):
        self.seen += 1
        if self.armed and self.seen == self.after:
            open(self.marker, "w").close()
            sys.stderr.write("sabotage: %s now\n" % self.mode)
            sys.stderr.flush()
            if self.mode == "exit":
                os._exit(3)
            elif self.mode == "hang":
                time.sleep(3600)
            elif self.mode == "garbage":
                sys.stdout.write("this is not json\nend\n")
                sys.stdout.flush()
                time.sleep(3600)
        storm.emit([tup.values[0]])


Sabotage().run()
