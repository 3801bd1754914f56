"""The split-sentence bolt written with pystorm (unmodified library): emits do not
wait for task ids (need_task_ids is false), and pystorm acks each tuple itself."""
from pystorm import Bolt


class SplitSentenceBolt(Bolt):
    def process(self, tup):
        for word in tup.values[0].split(" "):
            self.emit([word])


if __name__ == "__main__":
    SplitSentenceBolt().run()
