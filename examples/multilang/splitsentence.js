// Storm's split-sentence example, written with storm.js (unmodified; found on
// NODE_PATH, as the squall image sets it).
var storm = require('storm');
var BasicBolt = storm.BasicBolt;

function SplitSentenceBolt() {
    BasicBolt.call(this);
}
SplitSentenceBolt.prototype = Object.create(BasicBolt.prototype);
SplitSentenceBolt.prototype.constructor = SplitSentenceBolt;

SplitSentenceBolt.prototype.process = function (tup, done) {
    var self = this;
    var words = tup.values[0].split(' ');
    var pending = words.length;
    words.forEach(function (word) {
        self.emit({tuple: [word], anchorTupleId: tup.id}, function (taskIds) {
            pending -= 1;
            if (pending === 0) {
                done();
            }
        });
    });
};

new SplitSentenceBolt().run();
