"""Storm's own split-sentence example, written with storm.py (unmodified)."""
import storm


class SplitSentenceBolt(storm.BasicBolt):
    def process(self, tup):
        for word in tup.values[0].split(" "):
            storm.emit([word])


SplitSentenceBolt().run()
