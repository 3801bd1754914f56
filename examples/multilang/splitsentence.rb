# Split sentences into words with Storm's own storm.rb (unmodified): each word
# anchored to its sentence, which is then acked (storm.rb's Bolt does not ack
# by itself). storm.rb must be on RUBYLIB.
require "storm"

class SplitSentenceBolt < Storm::Bolt
  def process(tup)
    tup.values[0].split(" ").each do |word|
      emit([word], anchor: tup)
    end
    ack(tup)
  end
end

SplitSentenceBolt.new.run
