"""The split-sentence bolt written with streamparse (unmodified library), as a
streamparse project would have it: `outputs` declared on the class, emits that
do not wait for task ids, and each tuple acked by streamparse (auto_ack)."""
from streamparse import Bolt


class SplitSentenceBolt(Bolt):
    outputs = ["word"]

    def process(self, tup):
        for word in tup.values[0].split(" "):
            self.emit([word])


if __name__ == "__main__":
    SplitSentenceBolt().run()
