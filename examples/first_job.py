"""A first penstock job: count the words of two lines on two parallel subtasks."""

from penstock import StreamExecutionEnvironment

env = StreamExecutionEnvironment.get_execution_environment({"parallelism.default": 2})
lines = env.from_collection(["to be or not to be", "that is the question"])
words = lines.flat_map(str.split).map(lambda word: (word, 1))
counts = words.key_by(lambda pair: pair[0]).sum(1)
for word, count in counts.execute_and_collect("first job"):
    print(word, count)
